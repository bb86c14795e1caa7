"""Retrieval: which help-center passages answer a question, and how sure we are.

Owns the embedder, the FAISS index wrapper, lexical (BM25) scoring and fusion, and the
on-disk index format that `knowledge_base` writes and `Retriever` reads.
"""

from retrieval.types import Passage, SearchFilters, SearchResult, Visibility

__all__ = ["Passage", "SearchFilters", "SearchResult", "Visibility"]
