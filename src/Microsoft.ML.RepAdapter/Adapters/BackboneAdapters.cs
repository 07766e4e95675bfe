using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// Attaching adapters to a backbone (or a task network around one), choosing what trains, and merging them away
/// afterwards (peft's inject / mark-trainable / merge_and_unload), for every method of <see cref="AdapterMethods"/>.
/// </summary>
public static class BackboneAdapters
{
    /// <summary>
    /// Attaches one adapter per site of <paramref name="config"/>'s placement (in the last <see cref="AdapterConfig.LastBlocks"/>
    /// blocks when set). Returns the sites used.
    /// </summary>
    public static IReadOnlyList<AdapterSite> AttachAdapters(this IAdaptableModel model, AdapterConfig config)
    {
        var sites = model.SitesOf(config);
        foreach (var site in sites)
        {
            var adapter = ModuleScopes.Unscoped(() => ProjectionAdapter.Create(config, site.Layer, site.Name));
            adapter.to(site.Layer.weight.device);
            site.Layer.AttachAdapter(adapter);
        }
        return sites;
    }

    /// <summary>The sites <paramref name="config"/> adapts: its placement's, in the last <see cref="AdapterConfig.LastBlocks"/> blocks when set.</summary>
    public static IReadOnlyList<AdapterSite> SitesOf(this IAdaptableModel model, AdapterConfig config)
    {
        var sites = model.AdapterSites(config.Placement);
        if (config.LastBlocks is not int last || sites.Count == 0) return sites;
        int first = sites.Max(site => site.Block) + 1 - last;
        return [.. sites.Where(site => site.Block >= first)];
    }

    /// <summary>The layers that currently carry an adapter.</summary>
    public static IEnumerable<AdaptableLayer> AdaptedLayers(this nn.Module model) =>
        model.modules().OfType<AdaptableLayer>().Where(layer => layer.Adapter is not null);

    /// <summary>
    /// Structural re-parameterisation: folds every adapter into the projection it feeds and removes it. The result is
    /// the plain backbone architecture (same modules, same parameter count); in eval mode it computes what the adapted
    /// model computed, up to float rounding. Returns the number of adapters merged.
    /// </summary>
    public static int MergeAdapters(this nn.Module model)
    {
        int merged = 0;
        foreach (var layer in model.AdaptedLayers().ToList())
        {
            if (layer.MergeAdapter()) merged++;
        }
        return merged;
    }

    /// <summary>Sets requires_grad on every parameter according to <paramref name="policy"/>.</summary>
    public static void SetTrainable(this IAdaptableModel model, TrainableParameters policy)
    {
        var module = model as nn.Module ?? throw new ArgumentException($"{model.GetType().Name} is not a TorchSharp module.", nameof(model));
        foreach (var (name, parameter) in module.named_parameters())
        {
            bool isAdapter = IsAdapterParameter(name);
            bool trainable = model.IsHeadParameter(name) || policy switch
            {
                TrainableParameters.All => true,
                TrainableParameters.HeadOnly => false,
                TrainableParameters.AdaptersAndHead => isAdapter,
                TrainableParameters.AdaptersHeadAndBiases => isAdapter || name.EndsWith(".bias", StringComparison.Ordinal),
                _ => throw new ArgumentOutOfRangeException(nameof(policy), policy, null),
            };
            parameter.requires_grad = trainable;
        }
        model.FreezeNormStatistics = policy != TrainableParameters.All;
    }

    /// <summary>Whether the named parameter belongs to an adapter (lives under an <c>adapter</c> module).</summary>
    public static bool IsAdapterParameter(string parameterName) =>
        parameterName.Contains(".adapter.", StringComparison.Ordinal) || parameterName.StartsWith("adapter.", StringComparison.Ordinal);

    /// <summary>Number of adapter parameters; <paramref name="includeBiases"/> false counts weights only (the paper's "0.22M").</summary>
    public static long CountAdapterParameters(this nn.Module model, bool includeBiases = true) =>
        model.named_parameters()
            .Where(p => IsAdapterParameter(p.name) && (includeBiases || !p.name.EndsWith(".bias", StringComparison.Ordinal)))
            .Sum(p => p.parameter.numel());

    /// <summary>Number of parameters of <paramref name="model"/>; only those with requires_grad when <paramref name="trainableOnly"/>.</summary>
    public static long CountParameters(this nn.Module model, bool trainableOnly = false) =>
        model.parameters().Where(p => !trainableOnly || p.requires_grad).Sum(p => p.numel());
}
