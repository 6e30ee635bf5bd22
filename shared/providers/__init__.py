"""Provider adapters, one package per kind: the only code that knows a vendor's wire format."""
