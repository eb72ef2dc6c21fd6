"""OpenAI-compatible LLM endpoints: the client, its response cache, and the local llama.cpp server."""
