"""Real architectures (ResNet-18, MobileNetV2, ViT, 1-D conv, UNet) tiled, exported, inspected,
compiled for the host and Cortex-M, and checked against torch and onnxruntime."""
