"""``scalerec report``: one self-contained HTML page from what a finished demo left in its data folder.

``models`` types the demo's report (the demo writes it, the page reads it), ``inputs`` reads and types
the files (demo report, model cards, experiment result, Locust CSV), ``charts`` draws them with matplotlib as inline SVG, ``html`` fills the Jinja2 template.
"""

# What a demo's data folder holds for the report (constants only here: importing this package is cheap).
DEMO_REPORT_FILE = "report.json"
HTML_REPORT_FILE = "report.html"
EXPERIMENT_FILE = "experiment.json"
LOADTEST_DIR = "loadtest"
MODEL_REPOSITORY_DIR = "model_repository"
