using Microsoft.Extensions.ObjectPool;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace RepAdapterWebService;

/// <summary>
/// PredictionEngines over one model, pooled: an engine is not thread-safe, but engines over the same model can score in
/// parallel (the RepAdapter transformer's forward pass takes a shared lock; an ONNX Runtime session runs concurrently).
/// Microsoft.Extensions.ML's PredictionEnginePool does this too, but that package is not available here.
/// </summary>
internal sealed class EnginePool<TInput> : IDisposable where TInput : class, new()
{
    private readonly ObjectPool<PredictionEngine<TInput, ScoreRow>> _pool;

    /// <param name="size">Engines kept for reuse: the most requests that score at once, so none is created under load.</param>
    public EnginePool(MLContext mlContext, ITransformer model, SchemaDefinition inputDefinition, int size)
    {
        var policy = new EnginePolicy(() => mlContext.Model.CreatePredictionEngine<TInput, ScoreRow>(model, inputSchemaDefinition: inputDefinition));
        // For IDisposable engines the provider's pool disposes those it does not keep, and the rest when it is disposed.
        _pool = new DefaultObjectPoolProvider { MaximumRetained = size }.Create(policy);
        // One engine now: a model that cannot score the rows fails at startup, not at the first request.
        _pool.Return(_pool.Get());
    }

    /// <summary>The class probabilities of one row.</summary>
    public float[] Score(TInput row)
    {
        var engine = _pool.Get();
        try
        {
            return engine.Predict(row).Score;
        }
        finally
        {
            // Also after a bad image: an engine keeps no state from a row that failed (the next row is read afresh).
            _pool.Return(engine);
        }
    }

    public void Dispose() => (_pool as IDisposable)?.Dispose();

    private sealed class EnginePolicy(Func<PredictionEngine<TInput, ScoreRow>> create) : IPooledObjectPolicy<PredictionEngine<TInput, ScoreRow>>
    {
        public PredictionEngine<TInput, ScoreRow> Create() => create();

        public bool Return(PredictionEngine<TInput, ScoreRow> engine) => true;
    }
}
