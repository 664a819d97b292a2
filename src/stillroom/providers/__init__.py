"""Where completions come from: OpenAI-compatible servers, Azure OpenAI deployments, a local GGUF model."""
