"""FireTasks for segmented MD runs, staging and pull."""
