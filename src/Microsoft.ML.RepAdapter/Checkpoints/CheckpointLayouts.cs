using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Checkpoints;

/// <summary>Naming conventions of the checkpoints this library imports.</summary>
public enum CheckpointLayout
{
    /// <summary>timm VisionTransformer state dict: our own names (patch_embed.proj.weight, blocks.N.attn.qkv.weight, ...).</summary>
    TimmViT,
    /// <summary>Google's original ViT .npz (big_vision / vision_transformer): embedding/kernel, Transformer/encoderblock_N/...</summary>
    GoogleViT,
    /// <summary>Hugging Face ViTModel / ViTForImageClassification: [vit.]encoder.layer.N..., separate query/key/value.</summary>
    HuggingFaceViT,
    /// <summary>torchvision ResNet state dict: our own names (conv1.weight, layer1.0.conv1.weight, fc.weight, ...).</summary>
    TorchvisionResNet,
    /// <summary>ML.NET's DnnImageFeaturizer ResNet-18 ONNX graph (CNTK export), mapped by graph topology.</summary>
    MLNetResNet18Onnx,
}

/// <summary>A checkpoint's tensors renamed (and re-laid-out) to the library's parameter names.</summary>
/// <param name="Layout">The source layout.</param>
/// <param name="Weights">The tensors under library names.</param>
/// <param name="Ignored">Source tensors left out on purpose, with the reason (e.g. Hugging Face's pooler).</param>
internal sealed record ConvertedCheckpoint(CheckpointLayout Layout, OrderedDictionary<string, Tensor> Weights, IReadOnlyDictionary<string, string> Ignored);

/// <summary>
/// Converts each supported layout to timm / torchvision names. Every source tensor must be used or listed as ignored
/// with a reason, so nothing in a file is silently dropped. Call inside a dispose scope: converted tensors are new.
/// </summary>
internal static class CheckpointLayouts
{
    public static ConvertedCheckpoint Convert(TensorCheckpoint checkpoint)
    {
        if (checkpoint.Format == CheckpointFormat.Onnx)
            throw new CheckpointException(checkpoint.Path, null,
                "an ONNX graph carries its own preprocessing outside the weights: load ML.NET's ResNet-18 with PretrainedBackbones.LoadMLNetResNet18.");
        var tensors = StripDataParallelPrefix(checkpoint.Tensors);
        var keys = new KeyTaker(checkpoint.Path, tensors);
        if (tensors.ContainsKey("embedding/kernel") || tensors.ContainsKey("opt/target/embedding/kernel")) return GoogleToTimm(keys);
        if (tensors.ContainsKey("vit.embeddings.patch_embeddings.projection.weight") || tensors.ContainsKey("embeddings.patch_embeddings.projection.weight"))
            return HuggingFaceToTimm(keys);
        if (tensors.ContainsKey("patch_embed.proj.weight")) return Identity(CheckpointLayout.TimmViT, tensors);
        if (tensors.ContainsKey("layer1.0.conv1.weight")) return Identity(CheckpointLayout.TorchvisionResNet, tensors);
        throw new CheckpointException(checkpoint.Path, null,
            "unrecognised layout: expected a timm ViT (patch_embed.proj.weight), Google ViT .npz (embedding/kernel), Hugging Face ViT "
            + $"(embeddings.patch_embeddings.projection.weight) or torchvision ResNet (layer1.0.conv1.weight); found keys {Describe.Keys(tensors.Keys)}.");
    }

    /// <summary>nn.DataParallel / DistributedDataParallel save every name under "module."; drop it when all names have it.</summary>
    private static IReadOnlyDictionary<string, Tensor> StripDataParallelPrefix(IReadOnlyDictionary<string, Tensor> tensors)
    {
        const string prefix = "module.";
        if (tensors.Count == 0 || !tensors.Keys.All(k => k.StartsWith(prefix, StringComparison.Ordinal))) return tensors;
        var stripped = new OrderedDictionary<string, Tensor>();
        foreach (var (key, tensor) in tensors) stripped.Add(key[prefix.Length..], tensor);
        return stripped;
    }

    private static ConvertedCheckpoint Identity(CheckpointLayout layout, IReadOnlyDictionary<string, Tensor> tensors)
    {
        var weights = new OrderedDictionary<string, Tensor>();
        foreach (var (key, tensor) in tensors) weights.Add(key, tensor);
        return new ConvertedCheckpoint(layout, weights, new Dictionary<string, string>());
    }

    /// <summary>
    /// Google ViT .npz -> timm (the inverse of what timm's _load_weights undoes): kernels are [in, out], q/k/v kernels
    /// [D, heads, head_dim], out/kernel [heads, head_dim, D], embedding/kernel HWIO. "opt/target/" (Flax optimizer
    /// checkpoints) is accepted as a prefix.
    /// </summary>
    private static ConvertedCheckpoint GoogleToTimm(KeyTaker keys)
    {
        string p = keys.Has("opt/target/embedding/kernel") ? "opt/target/" : "";
        var w = new OrderedDictionary<string, Tensor>();
        w["patch_embed.proj.weight"] = keys.Take(p + "embedding/kernel", rank: 4).permute(3, 2, 0, 1).contiguous();   // HWIO -> OIHW
        w["patch_embed.proj.bias"] = keys.Take(p + "embedding/bias");
        w["cls_token"] = keys.Take(p + "cls");
        w["pos_embed"] = keys.Take(p + "Transformer/posembed_input/pos_embedding");
        int depth = CountBlocks(keys, i => $"{p}Transformer/encoderblock_{i}/LayerNorm_0/scale");
        for (int i = 0; i < depth; i++)
        {
            string s = $"{p}Transformer/encoderblock_{i}/", t = $"blocks.{i}.", mha = s + "MultiHeadDotProductAttention_1/";
            w[t + "norm1.weight"] = keys.Take(s + "LayerNorm_0/scale");
            w[t + "norm1.bias"] = keys.Take(s + "LayerNorm_0/bias");
            // q/k/v kernel [D, heads, head_dim] -> rows of the fused [3D, D] weight.
            string[] parts = ["query", "key", "value"];
            w[t + "attn.qkv.weight"] = keys.Concat(parts.Select(n => mha + n + "/kernel").ToArray(), k => k.flatten(1).t(), rank: 3);
            w[t + "attn.qkv.bias"] = keys.Concat(parts.Select(n => mha + n + "/bias").ToArray(), b => b.flatten(), rank: 2);
            w[t + "attn.proj.weight"] = keys.Take(mha + "out/kernel", rank: 3).flatten(0, 1).t().contiguous();         // [heads, hd, D] -> [D, heads*hd]
            w[t + "attn.proj.bias"] = keys.Take(mha + "out/bias");
            w[t + "norm2.weight"] = keys.Take(s + "LayerNorm_2/scale");
            w[t + "norm2.bias"] = keys.Take(s + "LayerNorm_2/bias");
            for (int r = 0; r < 2; r++)
            {
                w[t + $"mlp.fc{r + 1}.weight"] = keys.Take(s + $"MlpBlock_3/Dense_{r}/kernel", rank: 2).t().contiguous();
                w[t + $"mlp.fc{r + 1}.bias"] = keys.Take(s + $"MlpBlock_3/Dense_{r}/bias");
            }
        }
        w["norm.weight"] = keys.Take(p + "Transformer/encoder_norm/scale");
        w["norm.bias"] = keys.Take(p + "Transformer/encoder_norm/bias");
        if (keys.Has(p + "pre_logits/kernel"))
        {
            w["pre_logits.fc.weight"] = keys.Take(p + "pre_logits/kernel", rank: 2).t().contiguous();
            w["pre_logits.fc.bias"] = keys.Take(p + "pre_logits/bias");
        }
        if (keys.Has(p + "head/kernel"))
        {
            w["head.weight"] = keys.Take(p + "head/kernel", rank: 2).t().contiguous();
            w["head.bias"] = keys.Take(p + "head/bias");
        }
        keys.ThrowIfAnyUnused("Google ViT .npz");
        return new ConvertedCheckpoint(CheckpointLayout.GoogleViT, w, new Dictionary<string, string>());
    }

    /// <summary>Hugging Face ViT -> timm: q/k/v are fused as rows [0:D], [D:2D], [2D:3D]; ViTModel has no "vit." prefix.</summary>
    private static ConvertedCheckpoint HuggingFaceToTimm(KeyTaker keys)
    {
        string p = keys.Has("vit.embeddings.patch_embeddings.projection.weight") ? "vit." : "";
        var w = new OrderedDictionary<string, Tensor>();
        var ignored = new Dictionary<string, string>();
        w["patch_embed.proj.weight"] = keys.Take(p + "embeddings.patch_embeddings.projection.weight");
        w["patch_embed.proj.bias"] = keys.Take(p + "embeddings.patch_embeddings.projection.bias");
        w["cls_token"] = keys.Take(p + "embeddings.cls_token");
        w["pos_embed"] = keys.Take(p + "embeddings.position_embeddings");
        int depth = CountBlocks(keys, i => $"{p}encoder.layer.{i}.layernorm_before.weight");
        (string Timm, string Hf)[] linears =
        [
            ("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"), ("norm2", "layernorm_after"),
            ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
        ];
        for (int i = 0; i < depth; i++)
        {
            string h = $"{p}encoder.layer.{i}.", t = $"blocks.{i}.";
            string[] parts = ["query", "key", "value"];
            w[t + "attn.qkv.weight"] = keys.Concat(parts.Select(n => $"{h}attention.attention.{n}.weight").ToArray(), x => x, rank: 2);
            if (keys.Has($"{h}attention.attention.query.bias"))
                w[t + "attn.qkv.bias"] = keys.Concat(parts.Select(n => $"{h}attention.attention.{n}.bias").ToArray(), x => x, rank: 1);
            foreach (var (timm, hf) in linears)
            {
                w[$"{t}{timm}.weight"] = keys.Take($"{h}{hf}.weight");
                w[$"{t}{timm}.bias"] = keys.Take($"{h}{hf}.bias");
            }
        }
        w["norm.weight"] = keys.Take(p + "layernorm.weight");
        w["norm.bias"] = keys.Take(p + "layernorm.bias");
        if (keys.Has("classifier.weight"))
        {
            w["head.weight"] = keys.Take("classifier.weight");
            w["head.bias"] = keys.Take("classifier.bias");
        }
        foreach (string pooler in new[] { p + "pooler.dense.weight", p + "pooler.dense.bias" })
        {
            if (!keys.Has(pooler)) continue;
            keys.Take(pooler);
            ignored[pooler] = "ViTModel's pooler (dense + tanh over the class token) is not part of timm's ViT; classification uses the final-norm class token.";
        }
        keys.ThrowIfAnyUnused("Hugging Face ViT");
        return new ConvertedCheckpoint(CheckpointLayout.HuggingFaceViT, w, ignored);
    }

    private static int CountBlocks(KeyTaker keys, Func<int, string> firstKeyOfBlock)
    {
        int depth = 0;
        while (keys.Has(firstKeyOfBlock(depth))) depth++;
        if (depth == 0) throw new CheckpointException(keys.Path, firstKeyOfBlock(0), "missing: expected at least one transformer block.");
        return depth;
    }

    /// <summary>Hands out source tensors by name, remembering which were used.</summary>
    private sealed class KeyTaker(string path, IReadOnlyDictionary<string, Tensor> tensors)
    {
        private readonly HashSet<string> _used = [];

        public string Path => path;

        public bool Has(string key) => tensors.ContainsKey(key);

        public Tensor Take(string key, int? rank = null)
        {
            if (!tensors.TryGetValue(key, out var tensor)) throw new CheckpointException(path, key, "missing from the checkpoint.");
            if (rank is int r && tensor.dim() != r)
                throw new CheckpointException(path, key, $"rank: expected a {r}-D tensor, found {Describe.ShapeOf(tensor)}.");
            _used.Add(key);
            return tensor;
        }

        /// <summary>Concatenates the transformed parts along dim 0 after checking they have equal shapes.</summary>
        public Tensor Concat(string[] parts, Func<Tensor, Tensor> transform, int rank)
        {
            var first = Take(parts[0], rank);
            foreach (string part in parts.Skip(1))
            {
                var tensor = Take(part, rank);
                if (!tensor.shape.SequenceEqual(first.shape))
                    throw new CheckpointException(path, part, $"shape: expected {Describe.ShapeOf(first)} like '{parts[0]}', found {Describe.ShapeOf(tensor)}.");
            }
            return cat(parts.Select(part => transform(tensors[part])).ToArray(), 0);
        }

        public void ThrowIfAnyUnused(string layout)
        {
            var unused = tensors.Keys.Where(k => !_used.Contains(k)).ToList();
            if (unused.Count > 0)
                throw new CheckpointException(path, unused[0], $"unexpected key(s) for a {layout} checkpoint: {Describe.Keys(unused)}.");
        }
    }
}
