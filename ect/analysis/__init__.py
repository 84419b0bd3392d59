"""Analysis of a study: tidy metrics, power-law fits, tables, figures and the published numbers to compare with."""
