"""Ship what was verified: the checkpoint's classifier as an ONNX graph that carries an attestation
(checkpoint, backbone, result and policy digests), and the deploy-time check of that attestation.

graph.py builds the torch module the graph is traced from, onnx.py exports it and writes the
metadata, attest.py checks an exported file against result.json and, when given, the checkpoint.
Only graph.py and the export/attest entry points import torch; the ``onnx`` package is needed for
both commands (``pip install 'ci-gate[onnx]'``), onnxruntime only for the parity probes.
"""
