"""Style packs: the corpus builder, packs from a user's folder, and the pack format."""
