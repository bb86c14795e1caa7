"""Bot: what one turn is. Turn logic (`Assistant`), prompt building, the generator and its
batching, answer policy (fallback, handoff, groundedness), and conversation state and
feedback in Redis. Imports no web framework and speaks no wire protocol.
"""
