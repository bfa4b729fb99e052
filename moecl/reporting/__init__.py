"""Terminal tables and run-directory files."""
from moecl.reporting.files import write_run_files
from moecl.reporting.terminal import print_report

__all__ = ["print_report", "write_run_files"]
