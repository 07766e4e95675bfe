using System.Globalization;

namespace RepAdapterWebService;

/// <summary>
/// POST /predict: the image as the raw body (any content type) or as the first file of a multipart form. 200 with the
/// label and per-class scores; 400 with the reason for a body that is no complete image; 413 for a body over the limit;
/// 503 with Retry-After when every scoring place and queue place is taken.
/// </summary>
internal sealed class PredictEndpoint(ImageClassifier classifier, ScoringGate gate, ServiceOptions options)
{
    public async Task<IResult> HandleAsync(HttpContext context)
    {
        var request = context.Request;
        // A declared length over the limit is refused before the request takes a place or sends its body.
        if (request.ContentLength > options.MaxBodyBytes) return TooLarge();
        // A place first, the body after: what waits in the queue is a request, not its bytes.
        using var place = await gate.EnterAsync(context.RequestAborted);
        if (place is null) return Overloaded(context);

        byte[]? image;
        try
        {
            image = await ReadImageAsync(request, context.RequestAborted);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            // A chunked body (no Content-Length) that grew past Kestrel's MaxRequestBodySize.
            return TooLarge();
        }
        catch (InvalidDataException e)
        {
            return Results.Problem(detail: $"The multipart form cannot be read: {e.Message}", statusCode: StatusCodes.Status400BadRequest, title: "Bad form");
        }
        if (image is null)
            return Results.Problem(detail: "The multipart form has no file: send the image as a file field, or as the raw body.",
                statusCode: StatusCodes.Status400BadRequest, title: "No image");

        try
        {
            return Results.Ok(classifier.Predict(image));
        }
        catch (InvalidDataException e)
        {
            // The RepAdapter transformer's message (or ImageDecoding's) names what is wrong with the image.
            return Results.Problem(detail: e.Message, statusCode: StatusCodes.Status400BadRequest, title: "Bad image");
        }
    }

    private static async Task<byte[]?> ReadImageAsync(HttpRequest request, CancellationToken aborted)
    {
        if (request.HasFormContentType)
        {
            var form = await request.ReadFormAsync(aborted);
            if (form.Files.Count == 0) return null;
            using var file = new MemoryStream(checked((int)form.Files[0].Length));
            await form.Files[0].CopyToAsync(file, aborted);
            return file.ToArray();
        }
        // Kestrel stops the read at MaxRequestBodySize (set from MaxBodyBytes), so the copy is bounded.
        using var body = new MemoryStream(checked((int)(request.ContentLength ?? 0)));
        await request.Body.CopyToAsync(body, aborted);
        return body.ToArray();
    }

    private IResult TooLarge() =>
        Results.Problem(detail: $"The body is over the limit of {options.MaxBodyBytes} bytes.", statusCode: StatusCodes.Status413PayloadTooLarge, title: "Body too large");

    private IResult Overloaded(HttpContext context)
    {
        context.Response.Headers.RetryAfter = ((int)Math.Ceiling(options.RetryAfter.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
        return Results.Problem(detail: $"All {gate.Concurrency} scoring places and the queue are taken: retry after {options.RetryAfter.TotalSeconds:0.#} s.",
            statusCode: StatusCodes.Status503ServiceUnavailable, title: "Overloaded");
    }
}
