using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.MLNet;

namespace Microsoft.ML.RepAdapter.Tests.MLNet;

/// <summary>The bounds put on a saved network description admit every real backbone and refuse what libtorch would choke on.</summary>
[TestClass]
public class SavedDescriptionTests
{
    [TestMethod]
    [DataRow("vit_tiny_patch16_224")]
    [DataRow("resnet18")]
    [DataRow("convnext_tiny")]
    [DataRow("swin_tiny_patch4_window7_224")]
    [DataRow("ViT-B/32")]
    public void EveryFamilysPresetDescriptionIsWithinTheBounds(string preset)
    {
        using var backbone = BackbonePresets.Create(preset, numClasses: 21_843);
        SavedDescription.CheckBounds(backbone.Describe().ToJson());
    }

    [TestMethod]
    [DataRow("{\"a\":-1}", "-1 at $.a")]
    [DataRow("{\"a\":[1,2,70000]}", "70000 at $.a[2]")]
    [DataRow("{\"a\":1e400}", "1e400 at $.a")]
    public void ANumberOutsideTheBoundsIsRefusedByItsPath(string json, string named)
    {
        var error = Assert.ThrowsExactly<InvalidDataException>(() => SavedDescription.CheckBounds(json));
        StringAssert.Contains(error.Message, named);
    }

    [TestMethod]
    public void DeeplyNestedJsonIsRefusedWithoutRecursingIntoIt()
    {
        string json = new string('[', 10_000) + new string(']', 10_000);
        var error = Assert.ThrowsExactly<InvalidDataException>(() => SavedDescription.CheckBounds(json));
        StringAssert.Contains(error.Message, "nests deeper than 16");
    }
}
