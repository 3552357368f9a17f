"""Data: tokenizer, indexed datasets, packed pretraining and SFT samples, THD/CP batch layout."""
