"""What the support lead sees: per-day figures kept as answers, ratings and handoffs are
recorded (daily.py), and the questions the help center does not answer, grouped by meaning (gaps.py)."""
