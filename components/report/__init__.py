"""The run report: the stage reports of one run gathered into JSON, Markdown and HTML with pictures."""
