namespace Microsoft.ML.RepAdapter;

/// <summary>Extensions of <see cref="MLContext"/> for controlling RepAdapter training.</summary>
public static class MLContextExtensions
{
    /// <summary>
    /// Asks running ML.NET work on <paramref name="mlContext"/> to stop: RepAdapter training checks it before every
    /// step and throws <see cref="OperationCanceledException"/>. (ML.NET itself exposes this only in its
    /// Experimental package.)
    /// </summary>
    public static void CancelExecution(this MLContext mlContext) => mlContext.CancelExecution();
}
