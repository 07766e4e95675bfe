using System.Globalization;

namespace RepAdapterWebService;

/// <summary>Which kind of saved model the service scores with.</summary>
public enum ModelKind
{
    /// <summary>Whatever the .zip holds: a RepAdapter transformer (torch) or an ONNX chain (onnx).</summary>
    Auto,
    /// <summary>The TorchSharp model: <c>mlContext.Model.Save</c> of the trained pipeline (needs libtorch).</summary>
    Torch,
    /// <summary>The chain of ML.NET built-ins around the ONNX graph (<c>ToOnnxPipeline</c>; ONNX Runtime, no libtorch).</summary>
    Onnx,
}

/// <summary>
/// Settings of the service. Overload is refused, not queued without end: at most <see cref="Concurrency"/> requests
/// score at once, <see cref="QueueLimit"/> more wait (each at most <see cref="QueueTimeout"/>), and any further one gets
/// 503 with Retry-After. Memory is therefore bounded by (Concurrency + QueueLimit) x <see cref="MaxBodyBytes"/>, since a
/// request's body is read only once it holds a place.
/// </summary>
public sealed record ServiceOptions
{
    /// <summary>The saved model (.zip).</summary>
    public string ModelPath { get; init; } = "";

    /// <summary>The kind of <see cref="ModelPath"/>; a kind given explicitly is checked against the file.</summary>
    public ModelKind Kind { get; init; } = ModelKind.Auto;

    /// <summary>Addresses to listen on, separated by ';' (port 0: a free port, read back from the started app's Urls).</summary>
    public string Urls { get; init; } = "http://localhost:5000";

    /// <summary>Requests scored at the same time (default: one per core).</summary>
    public int Concurrency { get; init; } = Environment.ProcessorCount;

    /// <summary>Requests waiting for a scoring slot; beyond them the service answers 503.</summary>
    public int QueueLimit { get; init; } = 32;

    /// <summary>The longest a request waits for a scoring slot before it gets 503.</summary>
    public TimeSpan QueueTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>The largest request body accepted (raw image or multipart form); larger ones get 413.</summary>
    public long MaxBodyBytes { get; init; } = 4 * 1024 * 1024;

    /// <summary>The Retry-After a 503 carries.</summary>
    public TimeSpan RetryAfter { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How long a shutdown waits for requests in flight before it cuts them off.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public const string Usage =
        "usage: RepAdapterWebService --model <model.zip> [--kind auto|torch|onnx] [--urls http://localhost:5000] [--concurrency N]\n" +
        "       [--queue N] [--queue-timeout SECONDS] [--max-body-bytes N] [--retry-after SECONDS] [--shutdown-timeout SECONDS]";

    /// <summary>Options from command-line arguments; an unknown option or a bad value is an <see cref="ArgumentException"/> naming it.</summary>
    public static ServiceOptions Parse(IReadOnlyList<string> args)
    {
        var options = new ServiceOptions();
        for (int i = 0; i < args.Count; i += 2)
        {
            string name = args[i];
            string value = i + 1 < args.Count ? args[i + 1] : throw new ArgumentException($"{name} needs a value.");
            options = name switch
            {
                "--model" => options with { ModelPath = value },
                "--kind" => options with { Kind = Enum.TryParse<ModelKind>(value, ignoreCase: true, out var kind) ? kind : throw new ArgumentException($"--kind must be auto, torch or onnx, not '{value}'.") },
                "--urls" => options with { Urls = value },
                "--concurrency" => options with { Concurrency = Integer(name, value) },
                "--queue" => options with { QueueLimit = Integer(name, value) },
                "--queue-timeout" => options with { QueueTimeout = Seconds(name, value) },
                "--max-body-bytes" => options with { MaxBodyBytes = Integer(name, value) },
                "--retry-after" => options with { RetryAfter = Seconds(name, value) },
                "--shutdown-timeout" => options with { ShutdownTimeout = Seconds(name, value) },
                _ => throw new ArgumentException($"Unknown option '{name}'."),
            };
        }
        options.Validate();
        return options;
    }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first setting that cannot work.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(ModelPath)) throw new ArgumentException("--model is required: the saved model (.zip) to serve.");
        if (!File.Exists(ModelPath)) throw new ArgumentException($"--model: no file '{ModelPath}'.");
        if (string.IsNullOrWhiteSpace(Urls)) throw new ArgumentException("--urls must name at least one address.");
        if (Concurrency < 1) throw new ArgumentException($"--concurrency must be at least 1, not {Concurrency}.");
        if (QueueLimit < 0) throw new ArgumentException($"--queue must not be negative, not {QueueLimit}.");
        if (QueueTimeout <= TimeSpan.Zero) throw new ArgumentException($"--queue-timeout must be positive, not {QueueTimeout.TotalSeconds} s.");
        if (MaxBodyBytes < 1) throw new ArgumentException($"--max-body-bytes must be at least 1, not {MaxBodyBytes}.");
        // Retry-After is sent in whole seconds (RFC 9110).
        if (RetryAfter < TimeSpan.FromSeconds(1)) throw new ArgumentException($"--retry-after must be at least 1 s, not {RetryAfter.TotalSeconds} s.");
        if (ShutdownTimeout < TimeSpan.Zero) throw new ArgumentException($"--shutdown-timeout must not be negative, not {ShutdownTimeout.TotalSeconds} s.");
    }

    private static int Integer(string name, string value) =>
        int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int parsed) ? parsed : throw new ArgumentException($"{name} needs an integer, not '{value}'.");

    private static TimeSpan Seconds(string name, string value) =>
        double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) && double.IsFinite(seconds)
            ? TimeSpan.FromSeconds(seconds)
            : throw new ArgumentException($"{name} needs a number of seconds, not '{value}'.");
}
