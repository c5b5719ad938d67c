"""Export for deployment: ONNX (fp32 / fp16 / int8 QDQ), TensorRT calibration cache, DeepStream config."""
