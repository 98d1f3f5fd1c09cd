"""The study's Streamlit app (top layer: may import anything below it).

    make app                                   # best exported model of reports/latest
    make app ARGS="--model path/to/model.keras --port 8502"

``server`` builds and starts the Streamlit command (127.0.0.1 only); ``engine`` holds the logic
(models, decoding, calibration, decisions, Grad-CAM, the batch table); ``inputs`` and ``ood``
the checks on uploads; ``pages`` the layout; ``main.py`` is the script Streamlit runs.
Importing this package imports neither Streamlit nor TensorFlow.
"""
