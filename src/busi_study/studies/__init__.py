"""What each notebook runs, composed from ``models`` (machinery), ``evaluation`` and ``explain``.

One module per notebook's study:

* ``model_run`` — one recipe under the protocol (grouped CV, evaluation, fold models, final model
  and card, the source study's own split, the claims table): notebooks 02–04, and every later model;
* ``benchmark`` — cached frozen features against the frozen base in the training loop (03);
* ``s1_pipeline`` — S1's enhancement ablation, lesion segmenter, classifier of the predicted lesion
  and S1's own protocol (05);
* ``lesion_aware`` — the study's lesion-aware candidates chosen on inner validation, late fusion with
  the S0 recipe, the comparison with S0 over training seeds (05);
* ``s4_study`` — S4's lightweight binary model, S4's protocol and the TFLite exports (06);
* ``heldout_maps`` — Grad-CAM of held-out images by the fold model that held them out, against the
  lesion masks, and the randomisation sanity check (07);
* ``folder_evaluation`` — any exported model on any labelled folder (the ``evaluate`` command, 08);
* ``external_validation`` — every final model on the external set, testing only (08).

``studies`` may import everything below it (data, evaluation, results, models, explain, analysis,
predict, plots), never ``report``, ``cli`` or ``app``; ``models`` never imports ``studies``
(import-linter contracts in ``pyproject.toml``).
"""
