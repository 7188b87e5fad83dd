"""The ONNX graph of an exported policy (`rlcli export format=onnx`), written with the `onnx`
package from the arrays of `rlcli.export.arrays`: the arithmetic of `rlcli.exported_policy`
(observation normalisation, convolutions, MLP, GRU cell, the deterministic head) as ONNX
operators."""

from __future__ import annotations

import numpy as np

from rlcli import exported_policy

ONNX_OPSET = 20  # Gelu with approximate="tanh" (flax's gelu) needs opset 20


def onnx_model(policy: dict[str, np.ndarray]):
    """The deterministic policy as an ONNX graph: input `obs` [batch, *obs_shape] float32,
    output `action` ([batch] int64, or [batch, D] float32); a recurrent policy also takes
    `state` [batch, H] and gives `next_state`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, constants = [], []

    def const(name, value):
        constants.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(op, *inputs, **attrs):
        name = f"{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, list(inputs), [name], **attrs))
        return name

    def activate(x):
        name = str(policy["activation"])
        if name == "silu":
            return node("Mul", x, node("Sigmoid", x))
        ops = {"tanh": ("Tanh", {}), "relu": ("Relu", {}), "elu": ("Elu", {"alpha": 1.0}),
               "gelu": ("Gelu", {"approximate": "tanh"})}
        op, attrs = ops[name]
        return node(op, x, **attrs)

    shape = tuple(int(d) for d in policy["obs_shape"])
    num_conv = int(policy.get("num_conv", 0))
    x = "obs" if num_conv else node("Flatten", "obs", axis=1)
    if "obs_mean" in policy:
        clip, stats_shape = float(policy["obs_clip"]), shape if num_conv else (-1,)
        x = node("Div", node("Sub", x, const("obs_mean", policy["obs_mean"].reshape(stats_shape))),
                 const("obs_scale", policy["obs_scale"].reshape(stats_shape)))
        x = node("Clip", x, const("obs_clip_low", -clip), const("obs_clip_high", clip))
    if num_conv:  # NHWC -> NCHW, the convolutions with flax's SAME padding, back to NHWC, flattened
        x = node("Transpose", x, perm=[0, 3, 1, 2])
        size, stride = shape[:2], int(policy["conv_stride"])
        for i in range(num_conv):
            kernel = policy[f"conv_kernel_{i}"]
            (top, bottom), (left, right) = (exported_policy.same_padding(n, kernel.shape[0], stride) for n in size)
            size = [-(-n // stride) for n in size]
            x = activate(node("Conv", x, const(f"conv_kernel_{i}", kernel.transpose(3, 2, 0, 1)),
                              const(f"conv_bias_{i}", policy[f"conv_bias_{i}"]), strides=[stride, stride],
                              pads=[top, left, bottom, right]))
        x = node("Flatten", node("Transpose", x, perm=[0, 2, 3, 1]), axis=1)
    for i in range(int(policy["num_hidden"])):
        x = activate(node("Add", node("MatMul", x, const(f"hidden_kernel_{i}", policy[f"hidden_kernel_{i}"])),
                          const(f"hidden_bias_{i}", policy[f"hidden_bias_{i}"])))
    recurrent = "gru_size" in policy
    if recurrent:  # the GRU cell of exported_policy.gru, written out
        def dense(name, v):
            out = node("MatMul", v, const(f"gru_{name}_kernel", policy[f"gru_{name}_kernel"]))
            return node("Add", out, const(f"gru_{name}_bias", policy[f"gru_{name}_bias"])) if f"gru_{name}_bias" in policy else out

        r = node("Sigmoid", node("Add", dense("ir", x), dense("hr", "state")))
        z = node("Sigmoid", node("Add", dense("iz", x), dense("hz", "state")))
        n = node("Tanh", node("Add", dense("in", x), node("Mul", r, dense("hn", "state"))))
        x = node("Add", node("Mul", node("Sub", const("gru_one", 1.0), z), n), node("Mul", z, "state"))
        nodes.append(helper.make_node("Identity", [x], ["next_state"]))
    head = node("Add", node("MatMul", x, const("head_kernel", policy["head_kernel"])),
                const("head_bias", policy["head_bias"]))
    kind = str(policy["kind"])
    if kind == "categorical":
        nodes.append(helper.make_node("ArgMax", [head], ["action"], axis=1, keepdims=0))
        output = helper.make_tensor_value_info("action", TensorProto.INT64, ["batch"])
    else:
        if kind == "squashed_gaussian":
            if "sde_log_std" in policy:
                head = node("Clip", head, const("mean_low", -2.0), const("mean_high", 2.0))
            low, high = policy["action_low"], policy["action_high"]
            unit = node("Mul", const("half", 0.5), node("Add", node("Tanh", head), const("one", 1.0)))
            head = node("Add", const("action_low", low), node("Mul", unit, const("action_range", high - low)))
        nodes.append(helper.make_node("Identity", [head], ["action"]))
        output = helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", int(policy["head_bias"].shape[0])])
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", *map(int, policy["obs_shape"])])]
    outputs = [output]
    if recurrent:
        state_shape = ["batch", int(policy["gru_size"])]
        inputs.append(helper.make_tensor_value_info("state", TensorProto.FLOAT, state_shape))
        outputs.append(helper.make_tensor_value_info("next_state", TensorProto.FLOAT, state_shape))
    graph = helper.make_graph(nodes, "rlcli_policy", inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="rlcli")
    model.ir_version = 10  # what onnxruntime >= 1.18 reads
    onnx.checker.check_model(model)
    return model
