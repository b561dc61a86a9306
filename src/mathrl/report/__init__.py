"""What a run leaves for people: PNG plots (plots.py), the self-contained report.html and
run comparisons (html.py), and summary.json's headline numbers (summary.py)."""
