"""pipeline/export.py's closing lines about failed backends: which other runtimes took the same graph."""

from pipeline.export import took_elsewhere


def test_a_failed_backend_names_the_runtimes_that_took_the_same_graph():
    backends = {"executorch:fp32": {"status": "ok"}, "executorch:int8": {"status": "failed"},
                "tflite:fp32": {"status": "ok"}, "tflite:int8": {"status": "ok"},
                "coreml:fp32": {"status": "ok"}, "coreml:int8": {"status": "failed"}}
    lines = took_elsewhere(backends, ["executorch", "tflite", "coreml"], ("fp32", "int8"))
    assert lines == [
        "    export: executorch:int8 failed; the same graph, its ops included, did export to tflite:int8",
        "    export: coreml:int8 failed; the same graph, its ops included, did export to tflite:int8"]
    assert took_elsewhere({"tflite:int8": {"status": "failed"}}, ["tflite"], ("int8",)) == [
        "    export: tflite:int8 failed; no other selected runtime took this graph either"]
    assert took_elsewhere(backends, ["tflite"], ("fp32", "int8")) == []
