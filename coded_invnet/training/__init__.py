"""Training of the shipped models: base classifier f = h∘g (Manifold Mixup, optional decoding loss),
Coded-InvNet encoders F_k, ParM parity models.

Every run is resumable: state is saved to ``checkpoints/`` after each epoch and picked up on restart;
the best epoch on the validation split is what gets written to ``models/``.

    python -m coded_invnet.training base --dataset mnist
    python -m coded_invnet.training encoder --dataset mnist --k 10
    python -m coded_invnet.training parm --dataset mnist --k 10
    python -m coded_invnet.training all            # every shipped model that is missing

Modules: ``recipe`` (what each shipped model is trained with), ``loop`` (the resumable epoch loop),
``average`` (weight average), ``augment``, ``losses``, ``groups`` (what encoders and ParM train on),
one module per model kind (``classifier``, ``encoder``, ``parm``), ``jobs`` (the shipped set in
dependency order) and ``cli``.
"""
