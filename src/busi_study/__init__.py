"""busi_study: a reproducible study of deep learning for breast-ultrasound classification (BUSI).

The package holds the logic; the numbered notebooks in ``notebooks/`` call it and tell the story.
"""

__version__ = "0.1.0"
