"""HTTP surface: the carml REST/msgpack API, the Open Inference Protocol (KServe v2) and the page."""
