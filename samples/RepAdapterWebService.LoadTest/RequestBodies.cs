namespace RepAdapterWebService.LoadTest;

/// <summary>What a request body is: an image, or one of the bad bodies a service meets.</summary>
internal enum BodyKind
{
    Good,
    /// <summary>A good image cut short at a random byte (an interrupted upload).</summary>
    Truncated,
    /// <summary>Random bytes of random length (not an image at all).</summary>
    RandomBytes,
    /// <summary>No bytes.</summary>
    Empty,
}

/// <summary>A request body and the status the service must answer it with.</summary>
internal sealed record RequestBody(BodyKind Kind, byte[] Bytes)
{
    public int ExpectedStatus => Kind == BodyKind.Good ? 200 : 400;
}

internal static class RequestBodies
{
    /// <summary>
    /// <paramref name="count"/> bodies, of which round(count x <paramref name="badFraction"/>) are bad (truncated images,
    /// random bytes and empty bodies in turn) at random places, and the rest the good images in turn. Deterministic for a seed.
    /// </summary>
    public static List<RequestBody> Mix(IReadOnlyList<byte[]> images, int count, double badFraction, int seed)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(images.Count, nameof(images));
        ArgumentOutOfRangeException.ThrowIfLessThan(badFraction, 0, nameof(badFraction));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(badFraction, 1, nameof(badFraction));
        var random = new Random(seed);
        int bad = (int)Math.Round(count * badFraction);
        var bodies = new List<RequestBody>(count);
        for (int i = 0; i < count; i++)
        {
            var image = images[i % images.Count];
            bodies.Add(i >= bad ? new RequestBody(BodyKind.Good, image) : (i % 3) switch
            {
                0 => new RequestBody(BodyKind.Truncated, image[..random.Next(1, image.Length)]),
                1 => new RequestBody(BodyKind.RandomBytes, RandomBytes(random)),
                _ => new RequestBody(BodyKind.Empty, []),
            });
        }
        random.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bodies));
        return bodies;
    }

    private static byte[] RandomBytes(Random random)
    {
        var bytes = new byte[random.Next(1, 4097)];
        random.NextBytes(bytes);
        return bytes;
    }
}
