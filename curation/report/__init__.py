"""The audit's presentation: the terminal funnel and the HTML report."""
