namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>
/// A checkpoint file that cannot be read or does not fit the model. The message names the file, the key (tensor name,
/// header field or graph node) when there is one, and what was expected versus what was found.
/// </summary>
public sealed class CheckpointException : Exception
{
    /// <summary>
    /// An error about <paramref name="path"/> (and <paramref name="key"/>, when not null); the exception's message is
    /// <c>path: 'key': message</c>.
    /// </summary>
    /// <param name="path">The checkpoint file.</param>
    /// <param name="key">The tensor, header field or node at fault, or null.</param>
    /// <param name="message">What was expected and what was found.</param>
    /// <param name="innerException">The underlying error, if any.</param>
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
