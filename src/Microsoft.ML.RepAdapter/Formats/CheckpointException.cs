namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>
/// A checkpoint file that cannot be read or does not fit the model. The message names the file, the key (tensor name,
/// header field or graph node) when there is one, and what was expected versus what was found.
/// </summary>
public sealed class CheckpointException : Exception
{
    public CheckpointException(string path, string? key, string message, Exception? innerException = null)
        : base(key is null ? $"{path}: {message}" : $"{path}: '{key}': {message}", innerException)
    {
        FilePath = path;
        Key = key;
    }

    /// <summary>The checkpoint file.</summary>
    public string FilePath { get; }

    /// <summary>The tensor, header field or node the problem is about (the first one when there are several).</summary>
    public string? Key { get; }
}
