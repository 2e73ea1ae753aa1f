"""FusionRoute: token-level collaboration of expert LLMs through a trained router."""
