using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using Microsoft.ML.Trainers;

namespace Microsoft.ML.RepAdapter.Classification;

/// <summary>The classification end of the ONNX scoring chain (see <c>RepAdapterTransformerBase.ToOnnxPipeline</c>).</summary>
internal static class OnnxMulticlassScorer
{
    /// <summary>
    /// ML.NET's multiclass scorer over the logits column: a maximum-entropy model with identity weights (sparse) and zero bias,
    /// whose scores are softmax(logits) (the Score column, slot names from the labels) and whose PredictedLabel is the
    /// argmax as a key over <paramref name="labels"/>: the columns, types and annotations of the TorchSharp
    /// transformer, from built-in components (Microsoft.ML.StandardTrainers, in the Microsoft.ML package).
    /// </summary>
    public static ITransformer Create(IHostEnvironment env, string logitsColumn, LabelKeyValues labels, string scoreColumn, string predictedLabelColumn)
    {
        int classes = labels.Count;
        // Sparse one-hot rows: a dense identity is K x K floats (40 GB for 100,000 classes).
        var weights = Enumerable.Range(0, classes).Select(k => new VBuffer<float>(classes, 1, [1f], [k])).ToArray();
        // The constructor is internal (there is no public way to state weights): see build/Publicize.targets.
        var parameters = new MaximumEntropyModelParameters(env, weights, new float[classes], classes, classes, labels.Names, null);

        // The training schema the scorer reads the label's key values from (no data: only the schema is kept).
        const string label = "Label";
        var annotations = new DataViewSchema.Annotations.Builder();
        annotations.Add(AnnotationUtils.Kinds.KeyValues, labels.Type, labels.Getter());
        var schema = new DataViewSchema.Builder();
        schema.AddColumn(logitsColumn, new VectorDataViewType(NumberDataViewType.Single, classes));
        schema.AddColumn(label, new KeyDataViewType(typeof(uint), classes), annotations.ToAnnotations());
        return new MulticlassPredictionTransformer<MaximumEntropyModelParameters>(env, parameters, schema.ToSchema(), logitsColumn, label,
            scoreColumn, predictedLabelColumn);
    }
}
