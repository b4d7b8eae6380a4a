"""The operators a TorchScript module or a torch.export (.pt2) program may call to be accepted.

An allow-list, not a deny-list: an uploaded PyTorch program is accepted only when every
operator it names is a pure tensor (or scalar, list, string) computation listed here. What
reads or writes files (`aten::from_file`, `aten::save`), shares memory with other processes
(`aten::_share_memory_`), calls back into Python (`prim::PythonOp`), talks to other
processes (`prim::rpc_*`, `c10d::*`), prints, or comes from a custom or compiled library
(`torch.ops.<custom>`, `torch.classes`, `quantized::`, `mkldnn::`) is absent, so it is
refused by default. A model that needs an operator missing here is refused with the
operator's name; add it here (one place) after checking that it only computes on tensors.

Names are operator names without their overload (`add`, not `add.Tensor`). An in-place
variant (`relu_`) is allowed when its operator (`relu`) is. Imports nothing from torch.
"""

from __future__ import annotations


def _names(*groups: str) -> frozenset[str]:
    """Operator names written as words, in groups, so that the list reads as a table."""
    return frozenset(name for group in groups for name in group.split())


#: `aten::` operators: computations on tensors, scalars, lists and strings.
ATEN_OPERATORS: frozenset[str] = _names(
    # arithmetic and elementwise math
    """
    add sub rsub mul div true_divide floor_divide floordiv remainder fmod neg negative abs
    pow float_power sqrt rsqrt square exp exp2 expm1 log log2 log10 log1p sin cos tan asin
    acos atan atan2 sinh cosh tanh asinh acosh atanh sign sgn reciprocal clamp clamp_min
    clamp_max clip floor ceil round trunc frac lerp addcmul addcdiv erf erfc erfinv logit
    maximum minimum fmax fmin hypot xlogy bitwise_and bitwise_or bitwise_xor bitwise_not
    bitwise_left_shift bitwise_right_shift logical_and logical_or logical_xor logical_not
    __and__ __or__ __xor__ __lshift__ __rshift__ __iand__ __ior__ __ixor__ divmod
    nan_to_num copysign deg2rad rad2deg
    """,
    # comparisons and tests
    """
    eq ne lt le gt ge equal isnan isinf isfinite isneginf isposinf isclose allclose where
    __is__ __isnot__ __not__ __contains__ is_floating_point is_complex is_nonzero
    is_same_size is_contiguous is_autocast_enabled is_grad_enabled is_inference
    set_grad_enabled
    """,
    # activations
    """
    relu relu6 leaky_relu elu selu celu gelu silu mish hardtanh hardsigmoid hardswish
    softplus softshrink hardshrink threshold prelu _prelu_kernel rrelu
    glu sigmoid log_sigmoid softmax log_softmax _softmax _log_softmax logsumexp
    """,
    # linear algebra
    """
    linear matmul mm bmm addmm addbmm baddbmm addmv addr mv dot vdot outer einsum bilinear
    tensordot kron norm frobenius_norm nuclear_norm linalg_vector_norm linalg_matrix_norm
    linalg_norm renorm cdist cosine_similarity pairwise_distance _addmm_activation
    """,
    # convolution, pooling, resampling, padding
    """
    conv1d conv2d conv3d convolution _convolution conv_transpose1d conv_transpose2d
    conv_transpose3d max_pool1d max_pool2d max_pool3d max_pool1d_with_indices
    max_pool2d_with_indices max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d _adaptive_avg_pool2d
    _adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    pixel_shuffle pixel_unshuffle channel_shuffle upsample_nearest1d upsample_nearest2d
    upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d
    _upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d upsample_bicubic2d
    upsample_trilinear3d _upsample_bilinear2d_aa _upsample_bicubic2d_aa _upsample_lanczos2d_aa
    grid_sampler
    grid_sampler_2d grid_sampler_3d affine_grid_generator im2col col2im pad
    constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d
    replication_pad2d replication_pad3d _pad_circular _pad_enum
    """,
    # normalization and dropout
    """
    batch_norm _batch_norm_impl_index native_batch_norm _native_batch_norm_legit
    _native_batch_norm_legit_no_training _native_batch_norm_legit_functional layer_norm
    native_layer_norm group_norm native_group_norm instance_norm rms_norm _fused_rms_norm
    dropout feature_dropout alpha_dropout feature_alpha_dropout native_dropout
    """,
    # recurrent layers
    """
    lstm gru rnn_tanh rnn_relu lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
    _pack_padded_sequence _pad_packed_sequence
    """,
    # attention and transformer fast paths
    """
    scaled_dot_product_attention _scaled_dot_product_attention_math
    _scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_flash_attention
    _scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention
    _fused_sdp_choice _native_multi_head_attention _transformer_encoder_layer_fwd
    _transform_bias_rescale_qkv _masked_softmax _nested_tensor_from_mask
    _nested_tensor_from_mask_left_aligned _nested_tensor_from_tensor_list to_padded_tensor
    """,
    # embeddings
    """
    embedding embedding_bag _embedding_bag one_hot
    """,
    # shapes, views, indexing
    """
    view reshape _reshape_alias _unsafe_view flatten unflatten squeeze unsqueeze permute
    transpose t contiguous expand expand_as repeat repeat_interleave tile cat concat
    concatenate stack hstack vstack dstack split split_with_sizes tensor_split chunk unbind
    narrow select slice index_select gather scatter scatter_add scatter_reduce index
    index_put index_add index_copy index_fill masked_fill masked_select masked_scatter
    take take_along_dim movedim moveaxis swapaxes swapdims flip fliplr flipud roll rot90
    diagonal diag diag_embed tril triu view_as reshape_as unfold alias detach clone size
    sym_size dim numel stride sym_stride sym_numel broadcast_to broadcast_tensors meshgrid
    atleast_1d atleast_2d atleast_3d squeeze_copy unsqueeze_copy view_copy permute_copy
    expand_copy select_copy slice_copy transpose_copy t_copy alias_copy detach_copy
    _unsafe_index select_scatter slice_scatter diagonal_scatter
    """,
    # reductions, sorting, searching
    """
    sum mean nanmean prod max min amax amin aminmax argmax argmin all any std var std_mean
    var_mean cumsum cumprod cummax cummin logcumsumexp sort argsort topk kthvalue median
    nanmedian mode count_nonzero nonzero bucketize searchsorted histc bincount
    """,
    # creation, random, conversion
    """
    zeros ones full empty zeros_like ones_like full_like empty_like arange linspace
    logspace eye tensor scalar_tensor as_tensor rand randn rand_like randn_like randint
    randint_like randperm bernoulli multinomial normal new_zeros new_ones new_full new_empty
    new_empty_strided empty_strided lift_fresh_copy lift_fresh fill fill_ zero_ copy_
    _to_copy to type_as _cast_Float _cast_Long _cast_Int _cast_Half _cast_Byte
    item _local_scalar_dense numpy_T real imag view_as_real view_as_complex
    complex polar
    """,
    # TorchScript's builtins on scalars, lists, dicts, strings and devices
    """
    Int Float Bool ScalarImplicit IntImplicit FloatImplicit ComplexImplicit append extend
    insert pop remove clear copy index count reverse len list __getitem__ _set_item
    __range_length __derive_index __upsample_nearest __interpolate keys values items get
    setdefault update dict str format join split startswith endswith lower upper strip
    lstrip rstrip isdigit isalpha isspace replace find splitlines __round_to_zero_floordiv
    device warn _assert_async _assert_scalar _assert_tensor_metadata
    _functional_assert_async _functional_assert_scalar _unwrap_optional sym_constrain_range
    sym_constrain_range_for_size
    """,
)

#: `prim::` operators: TorchScript's own control, container and tensor-metadata primitives.
#: `prim::PythonOp`, `prim::Print`, `prim::rpc_*`, `prim::profile` and the fusion and
#: graph-executor internals are deliberately absent.
PRIM_OPERATORS: frozenset[str] = _names(
    """
    NumToTensor RaiseException Uninitialized unchecked_cast unchecked_unwrap_optional
    TupleIndex TupleUnpack
    device dtype layout data requires_grad type name is_cuda is_cpu is_mps is_xpu is_meta
    is_nested is_quantized is_sparse is_sparse_csr is_mkldnn is_vulkan itemsize nbytes
    index min max abs rangelist StringIndex tolist
    """,
)

#: `higher_order::` operators of torch.export that run subgraphs of the same program (whose
#: nodes are checked like the rest): grad mode and autocast regions, `torch.cond` and
#: `while_loop`. Others (e.g. those that call back into Python) are absent.
HIGHER_ORDER_OPERATORS: frozenset[str] = _names(
    "wrap_with_set_grad_enabled wrap_with_autocast cond while_loop"
)

#: Functions that a torch.export graph may call besides operators (node targets outside
#: `torch.ops`): Python's operators and math on symbolic sizes, and torch's checks on them.
EXPORT_FUNCTIONS: frozenset[str] = frozenset(
    [
        *(
            f"_operator.{name}"
            for name in _names("""getitem add sub mul floordiv truediv mod pow neg pos abs eq ne
            lt le gt ge and_ or_ xor not_ invert lshift rshift""")
        ),
        *(
            f"math.{name}"
            for name in _names("floor ceil trunc sqrt exp log log2 pow fabs isnan isinf")
        ),
        *(
            f"torch.{name}"
            for name in _names("""sym_int sym_float sym_max sym_min sym_not sym_ite sym_sqrt sym_sum
            sym_float_pow _sym_sqrt _assert _assert_async _check _check_is_size
            _check_with""")
        ),
    ]
)

#: Plain-name calls that TorchScript code may make: its builtins and type constructors.
#: `print` (prim::Print) and `fork`/`wait` are absent.
TORCHSCRIPT_BUILTINS: frozenset[str] = _names(
    """
    int float bool str complex len range enumerate zip min max abs round divmod sum all any
    list tuple dict isinstance getattr hasattr annotate unchecked_cast uninitialized
    """,
)

#: The namespaces an operator name may come from, and what each allows.
_NAMESPACES = {
    "aten": ATEN_OPERATORS,
    "prim": PRIM_OPERATORS,
    "higher_order": HIGHER_ORDER_OPERATORS,
}


def operator_allowed(namespace: str, name: str) -> bool:
    """Whether `namespace::name` (e.g. `aten`, `relu_`) is on the allow-list."""
    allowed = _NAMESPACES.get(namespace)
    if allowed is None:
        return False
    if name in allowed:
        return True
    # In-place variants: `relu_` is `relu` writing into its input.
    return name.endswith("_") and not name.endswith("__") and name[:-1] in allowed


def export_target_refusal(target: str) -> str | None:
    """Why a torch.export node target is refused (None when allowed). Targets are
    `torch.ops.<namespace>.<operator>.<overload>` or one of EXPORT_FUNCTIONS."""
    if target in EXPORT_FUNCTIONS:
        return None
    parts = target.split(".")
    if len(parts) in (4, 5) and parts[:2] == ["torch", "ops"]:
        namespace, name = parts[2], parts[3]
        if operator_allowed(namespace, name):
            return None
        return f"the operator '{namespace}::{name}'"
    return f"'{target}', which is not a torch operator"
