"""The voice benchmark's perf breakdown: how native stacks are put in areas."""

from scripts.bench import perf_stacks

# `perf script -F ip,sym`: a sample per block, leaf first, an address before each name.
PERF_SCRIPT = """
\t  17ff2f sock_recv
\t  18aa00 CPyDef_media_socket___MediaSocket____pump_recv
\t  18ab00 CPyDef_media_socket___MediaSocket____pump_read
\t  18ac00 CPyDef_read_ticker___ReadTicker____round
\t  18ad00 ev_run

\t  27ff2f _PyEval_EvalFrameDefault
\t  28aa00 CPyDef_deepgram___DeepgramStream___send
\t  28ab00 CPyDef_media_socket___MediaSocket____pump_read
\t  28ac00 CPyDef_read_ticker___ReadTicker____round
\t  28ad00 CPyDef_call_loop___CallLoop____run_reply

\t  37ff2f _PyEval_EvalFrameDefault (inlined)
\t  38aa00 CPyDef_call_loop___CallLoop____run_reply

\t  47ff2f clear_page_erms
"""


def test_a_pump_round_run_from_a_reply_counts_as_the_pump_and_each_sample_once() -> None:
    samples = perf_stacks.stacks(PERF_SCRIPT)
    assert [s[0] for s in samples] == [
        "sock_recv",
        "_PyEval_EvalFrameDefault",
        "_PyEval_EvalFrameDefault (inlined)",
        "clear_page_erms",
    ]
    pump, replies = perf_stacks.AREAS[0][0], perf_stacks.AREAS[3][0]
    assert [perf_stacks.classify(s) for s in samples] == [
        (pump, "callers' frames: the socket read (recv)"),
        (pump, "callers' audio to Deepgram (level, batching, framing, send)"),
        (replies, None),
        ("the rest (greenlet starts, workers, the turn writer, ...)", None),
    ]
    lines = perf_stacks.breakdown(PERF_SCRIPT, 1)
    assert any(line.strip().startswith("50.0%  the pump's rounds") for line in lines)
    assert any(line.strip().startswith("25.0%  replies") for line in lines)


def test_a_provider_message_read_in_the_pump_is_its_own_part_of_the_pump() -> None:
    stack = perf_stacks.stacks(
        "\t 1 sock_recv\n\t 2 _PyEval_EvalFrameDefault\n\t 3 method_vectorcall\n"
        "\t 4 CPyDef_read_ticker___ReadTicker____round\n"
    )[0]
    area, part = perf_stacks.classify(stack)
    assert area == perf_stacks.AREAS[0][0]
    assert part == "provider messages: Deepgram results, Cartesia audio (interpreted)"
