using Microsoft.ML.Data;
using Microsoft.ML.Transforms.Image;

namespace RepAdapterWebService;

/// <summary>
/// The input row of a model that reads encoded bytes (Model Builder's <c>byte[] ImageSource</c>, as the main sample
/// trains): the request body as it came. <see cref="Label"/> feeds the pipeline's text label column, if it has one (its
/// MapValueToKey needs the column; scoring does not read it).
/// </summary>
internal sealed class EncodedImageRow
{
    public byte[] Image { get; set; } = [];

    public string Label { get; set; } = "";
}

/// <summary>The input row of a model whose pipeline starts with LoadImages: the body decoded, as LoadImages would have.</summary>
internal sealed class DecodedImageRow
{
    static DecodedImageRow() =>
        // Images of any size, as LoadImages outputs (the pipeline resizes them). [ImageType] needs a fixed height and width
        // (without them ML.NET refuses it), so MLImage is registered with the size-less image type instead, process-wide;
        // registering the same pair again is allowed.
        DataViewTypeManager.Register(new ImageDataViewType(), typeof(MLImage));

    public MLImage? Image { get; set; }

    /// <summary>The schema definition of this row, its image in column <paramref name="column"/>.</summary>
    public static SchemaDefinition Definition(string column)
    {
        var definition = SchemaDefinition.Create(typeof(DecodedImageRow));
        definition.Single(c => c.MemberName == nameof(Image)).ColumnName = column;
        return definition;
    }
}

/// <summary>What the service reads of a scored row: one probability per class (slot names: the labels).</summary>
internal sealed class ScoreRow
{
    public const string Column = "Score";

    [ColumnName(Column)]
    public float[] Score { get; set; } = [];
}
