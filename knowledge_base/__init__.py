"""Knowledge base: loading help-center files, chunking them, and writing versioned indexes.

Knows nothing of chat, Redis or HTTP; `retrieval` reads what this package writes.
"""
