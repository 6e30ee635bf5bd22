"""Benchmarks: each starts its own servers, drives them from a separate process, prints a table.

`loadgen` is the shared closed-loop HTTP load generator; `api` benchmarks the REST API;
`readers` is what the read micro-benchmarks (`media_read`, `provider_read`) share.
"""
