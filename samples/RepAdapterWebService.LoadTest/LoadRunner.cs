using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text.Json;

namespace RepAdapterWebService.LoadTest;

/// <summary>The final answer to one request, after any retries (Status 0: none came, Error says why).</summary>
internal sealed record Outcome(BodyKind Kind, int Status, string? Label, string? Detail, bool HasRetryAfter, double Milliseconds, int Attempts, string? Error)
{
    public bool AsExpected => Status == (Kind == BodyKind.Good ? 200 : 400);
}

/// <summary>
/// How a client retries: after a connection error (the server is down or restarting) and, when
/// <see cref="RetryOverload"/>, after a 503 (waiting its Retry-After), with exponential back-off and jitter.
/// </summary>
internal sealed record RetryPolicy(int MaxAttempts, TimeSpan FirstDelay, TimeSpan MaxDelay, bool RetryOverload)
{
    /// <summary>One attempt: what the server answers is what is recorded.</summary>
    public static readonly RetryPolicy None = new(1, TimeSpan.Zero, TimeSpan.Zero, RetryOverload: false);

    /// <summary>Up to 60 attempts, 50 ms doubling to 2 s: rides out a restart of a minute or so.</summary>
    public static readonly RetryPolicy Patient = new(60, TimeSpan.FromMilliseconds(50), TimeSpan.FromSeconds(2), RetryOverload: true);

    public TimeSpan Delay(int attempt)
    {
        double milliseconds = Math.Min(MaxDelay.TotalMilliseconds, FirstDelay.TotalMilliseconds * Math.Pow(2, attempt - 1));
        // Jitter, so that clients cut off together do not come back together.
        return TimeSpan.FromMilliseconds(milliseconds * (0.5 + Random.Shared.NextDouble()));
    }
}

/// <summary>Outcomes of a run with its wall-clock time; latencies are per request, retries included.</summary>
internal sealed class LoadResult(IReadOnlyList<Outcome> outcomes, TimeSpan elapsed, int asked)
{
    public IReadOnlyList<Outcome> Outcomes { get; } = outcomes;

    public TimeSpan Elapsed { get; } = elapsed;

    /// <summary>True when the time limit stopped the run before every request was sent.</summary>
    public bool CutShort => Outcomes.Count < asked;

    public double Throughput => Outcomes.Count / Elapsed.TotalSeconds;

    /// <summary>Nearest-rank percentile of the latencies, in milliseconds.</summary>
    public double Percentile(double percent)
    {
        var sorted = Outcomes.Select(o => o.Milliseconds).Order().ToArray();
        if (sorted.Length == 0) return double.NaN;
        int rank = (int)Math.Ceiling(percent / 100 * sorted.Length);
        return sorted[Math.Clamp(rank - 1, 0, sorted.Length - 1)];
    }

    public int Count(Func<Outcome, bool> predicate) => Outcomes.Count(predicate);

    /// <summary>
    /// What the service got wrong, one line per kind of mistake with a count and an example: a good image not answered
    /// 200 with one of <paramref name="labels"/>, a bad body not answered 400 with a reason. Empty when all is right.
    /// </summary>
    public List<string> Problems(IReadOnlyCollection<string> labels)
    {
        string? Wrong(Outcome o) => o switch
        {
            { Status: 0 } => $"{o.Kind}: no answer ({o.Error})",
            { Kind: BodyKind.Good, Status: 200 } when o.Label is null || !labels.Contains(o.Label) => $"Good: 200 with label '{o.Label}', not one of the model's",
            { Kind: BodyKind.Good, Status: not 200 } => $"Good: {o.Status} ({o.Detail})",
            { Kind: not BodyKind.Good, Status: not 400 } => $"{o.Kind}: {o.Status}, not 400",
            { Kind: not BodyKind.Good } when string.IsNullOrWhiteSpace(o.Detail) => $"{o.Kind}: 400 without a reason",
            _ => null,
        };
        return [.. Outcomes.Select(o => (Outcome: o, Wrong: Wrong(o))).Where(w => w.Wrong is not null)
            .GroupBy(w => (w.Outcome.Kind, w.Outcome.Status))
            .Select(g => $"{g.Count()} x {g.First().Wrong}")];
    }
}

/// <summary>
/// A closed-loop load: a number of clients, each sending its next request when the last one is answered, until every
/// body is sent or the time limit passes. <see cref="Completed"/> can be watched while it runs.
/// </summary>
internal sealed class LoadRunner(HttpClient client, Uri predict, RetryPolicy retry)
{
    private int _completed;

    /// <summary>Requests answered (or given up) so far in the current run.</summary>
    public int Completed => Volatile.Read(ref _completed);

    public async Task<LoadResult> RunAsync(IReadOnlyList<RequestBody> bodies, int clients, TimeSpan timeLimit)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(clients);
        Volatile.Write(ref _completed, 0);
        var outcomes = new Outcome?[bodies.Count];
        int next = -1;
        var clock = Stopwatch.StartNew();
        async Task Client()
        {
            while (clock.Elapsed < timeLimit)
            {
                int i = Interlocked.Increment(ref next);
                if (i >= bodies.Count) return;
                outcomes[i] = await SendAsync(bodies[i]);
                Interlocked.Increment(ref _completed);
            }
        }
        await Task.WhenAll(Enumerable.Range(0, clients).Select(_ => Task.Run(Client)));
        clock.Stop();
        return new LoadResult([.. outcomes.OfType<Outcome>()], clock.Elapsed, bodies.Count);
    }

    /// <summary>One request, retried as the policy says.</summary>
    public async Task<Outcome> SendAsync(RequestBody body)
    {
        var clock = Stopwatch.StartNew();
        for (int attempt = 1; ; attempt++)
        {
            TimeSpan wait;
            try
            {
                using var content = new ByteArrayContent(body.Bytes);
                content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
                using var response = await client.PostAsync(predict, content);
                int status = (int)response.StatusCode;
                string text = await response.Content.ReadAsStringAsync();
                bool retryAfter = response.Headers.RetryAfter is not null;
                if (status != 503 || !retry.RetryOverload || attempt >= retry.MaxAttempts)
                    return Answered(body.Kind, status, text, retryAfter, clock.Elapsed.TotalMilliseconds, attempt);
                wait = response.Headers.RetryAfter?.Delta ?? retry.Delay(attempt);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException)
            {
                // Connection refused or reset (the server is down or restarting), or no answer in the client's timeout.
                if (attempt >= retry.MaxAttempts)
                    return new Outcome(body.Kind, 0, null, null, false, clock.Elapsed.TotalMilliseconds, attempt, $"{e.GetType().Name}: {e.Message}");
                wait = retry.Delay(attempt);
            }
            await Task.Delay(wait);
        }
    }

    /// <summary>The label of a 200, the detail of a problem response (RFC 9457), or the body when it is not JSON.</summary>
    private static Outcome Answered(BodyKind kind, int status, string text, bool retryAfter, double milliseconds, int attempts)
    {
        string? label = null, detail = text;
        try
        {
            using var json = JsonDocument.Parse(text);
            if (status == 200 && json.RootElement.TryGetProperty("label", out var l)) label = l.GetString();
            else if (json.RootElement.TryGetProperty("detail", out var d)) detail = d.GetString();
        }
        catch (JsonException)
        {
            // Not JSON (e.g. Kestrel's own empty 413): keep the text as the detail.
        }
        return new Outcome(kind, status, label, detail, retryAfter, milliseconds, attempts, null);
    }
}
