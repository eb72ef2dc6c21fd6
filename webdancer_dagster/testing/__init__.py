"""Test stand-ins, for tests and benchmarks only: no production code path imports this package.

`scripted_llm` is an OpenAI-compatible server that replays scripted replies; `tiny_model` saves a tiny
random-weight Llama and teaches it chats. `tests/test_package_layout.py` checks that nothing else in
`webdancer_dagster` imports them.
"""
