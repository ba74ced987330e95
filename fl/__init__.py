"""Federated intent models (pure: no gRPC, no vault access).

``fl.features`` declares and encodes a dataset's features and computes the scaling statistics
federatedly under DP; ``fl.models`` builds logistic regression and a small MLP (PyTorch, CPU);
``fl.train`` trains locally, with DP-SGD (Opacus) when asked; ``fl.metrics`` has ROC-AUC;
``fl.scoring`` scores with a trained model's artifact in numpy (a node's query service). The
Flower apps that move these between the nodes and the coordinator are built on top of them.
"""

# The modules other packages may import (tests/test_public_names.py).
__all__ = ["artifact", "client", "deploy", "features", "metrics", "models", "protocol", "scoring",
           "train"]
