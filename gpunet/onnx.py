"""torch.onnx's name, so scripts that import it run; gpunet has no ONNX exporter."""

__all__ = ["export"]


def export(model, args, f=None, *a, **kw):
    raise NotImplementedError("onnx.export: gpunet cannot export ONNX models; save the weights with "
                              "gpunet.save(model.state_dict(), path) and load them into PyTorch")
