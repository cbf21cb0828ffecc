"""Whether the exports keep the model: held-out perplexity and top-1 against transformers."""
