"""Prompts to T5 token ids with a user's own tokenizer file."""
