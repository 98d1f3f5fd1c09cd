"""Data layer: acquire → manifest (validate, reference check) → groups → splits; demo data."""
