using System.Threading.RateLimiting;

namespace RepAdapterWebService;

/// <summary>
/// Bounded concurrency with a bounded queue and a bounded wait: what keeps an overloaded service answering (503, retry
/// later) instead of collapsing under an ever longer queue. It is ASP.NET Core's own ConcurrencyLimiter, used directly
/// rather than as middleware so that /health can report its counts and /predict can give up waiting after a timeout.
/// </summary>
public sealed class ScoringGate : IDisposable
{
    private readonly ConcurrencyLimiter _limiter;
    private readonly TimeSpan _queueTimeout;

    public ScoringGate(int concurrency, int queueLimit, TimeSpan queueTimeout)
    {
        _limiter = new ConcurrencyLimiter(new ConcurrencyLimiterOptions
        {
            PermitLimit = concurrency,
            QueueLimit = queueLimit,
            QueueProcessingOrder = QueueProcessingOrder.OldestFirst,
        });
        Concurrency = concurrency;
        _queueTimeout = queueTimeout;
    }

    /// <summary>Requests allowed to score at once.</summary>
    public int Concurrency { get; }

    /// <summary>Requests holding a place now.</summary>
    public long Scoring => Concurrency - (_limiter.GetStatistics()?.CurrentAvailablePermits ?? Concurrency);

    /// <summary>Requests waiting for a place now.</summary>
    public long Queued => _limiter.GetStatistics()?.CurrentQueuedCount ?? 0;

    /// <summary>
    /// A place to score, to be disposed when done; null when the queue is full or the wait timed out. Cancelled with
    /// <paramref name="aborted"/> (the client went away): an <see cref="OperationCanceledException"/>.
    /// </summary>
    public async Task<IDisposable?> EnterAsync(CancellationToken aborted)
    {
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(aborted);
        wait.CancelAfter(_queueTimeout);
        try
        {
            var lease = await _limiter.AcquireAsync(1, wait.Token);
            if (lease.IsAcquired) return lease;
            lease.Dispose();
            return null;
        }
        catch (OperationCanceledException) when (!aborted.IsCancellationRequested)
        {
            return null;
        }
    }

    public void Dispose() => _limiter.Dispose();
}
