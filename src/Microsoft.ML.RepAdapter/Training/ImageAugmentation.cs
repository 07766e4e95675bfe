using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>
/// Training-time augmentation of a batch: a random resized crop (torchvision's RandomResizedCrop: an area fraction in
/// [<paramref name="MinCropScale"/>, 1] and an aspect ratio in [3/4, 4/3], resized back to the input size) and a random
/// horizontal flip. Masks get the same crop (nearest neighbour) and flip. Draws depend only on (seed, epoch, batch),
/// so runs stay reproducible and resumable. Off by default, as the paper's VTAB-1k recipe.
/// </summary>
/// <param name="MinCropScale">Smallest area fraction of a crop; 1 turns cropping off.</param>
/// <param name="HorizontalFlip">Flip half the images left to right.</param>
public sealed record ImageAugmentation(double MinCropScale = 0.08, bool HorizontalFlip = true)
{
    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> for a setting that cannot work.</summary>
    public void Validate() =>
        OptionCheck.That(MinCropScale is > 0 and <= 1, "Augmentation.MinCropScale", MinCropScale, "must be in (0, 1]");

    /// <summary>The augmented batch (new tensors, in the caller's dispose scope).</summary>
    public ImageBatch Apply(ImageBatch batch, int seed, int epoch, int index)
    {
        var random = new Random(unchecked((seed * 7919 + epoch) * 104729 + index));
        long size = batch.Pixels.shape[2];
        bool perPixel = batch.Targets.dim() == 3;
        var pixels = new List<Tensor>();
        var targets = new List<Tensor>();
        for (int i = 0; i < batch.Count; i++)
        {
            Tensor image = batch.Pixels[i], target = batch.Targets[i];
            if (MinCropScale < 1 && Crop(random, size) is var (x, y, w, h))
            {
                image = nn.functional.interpolate(image.narrow(1, y, h).narrow(2, x, w).unsqueeze(0).to(float32), [size, size],
                    mode: InterpolationMode.Bilinear, align_corners: false)[0].round().ClampToBytes();
                if (perPixel)
                {
                    target = LabelMaps.Resize(target.narrow(0, y, h).narrow(1, x, w), size);
                }
            }
            if (HorizontalFlip && random.Next(2) == 1)
            {
                image = image.flip(2);
                if (perPixel) target = target.flip(1);
            }
            pixels.Add(image);
            targets.Add(target);
        }
        return new ImageBatch(stack(pixels), stack(targets));
    }

    /// <summary>torchvision's RandomResizedCrop box (ten tries, then the whole image).</summary>
    private (long X, long Y, long W, long H)? Crop(Random random, long size)
    {
        double area = size * size;
        for (int attempt = 0; attempt < 10; attempt++)
        {
            double target = area * (MinCropScale + random.NextDouble() * (1 - MinCropScale));
            double ratio = Math.Exp(Math.Log(3.0 / 4) + random.NextDouble() * (Math.Log(4.0 / 3) - Math.Log(3.0 / 4)));
            long w = (long)Math.Round(Math.Sqrt(target * ratio)), h = (long)Math.Round(Math.Sqrt(target / ratio));
            if (w > 0 && h > 0 && w <= size && h <= size)
                return (random.NextInt64(size - w + 1), random.NextInt64(size - h + 1), w, h);
        }
        return null;
    }
}
