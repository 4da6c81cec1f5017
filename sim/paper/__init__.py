"""The SplitLLM paper reproduction: static studies and the orchestration of its runs."""
