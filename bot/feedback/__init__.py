"""What visitors and agents say about answers: the feedback log (a Redis Stream), the sink
that writes it to files, agents' review of transcripts, redaction, and the export datasets."""
