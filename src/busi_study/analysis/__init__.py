"""Analyses that read the data and the models' predictions: exploratory data analysis and error analysis."""
