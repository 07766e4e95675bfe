using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Foundation;

[TestClass]
public class TorchSharpRuntimeTests
{
    [TestMethod]
    public void ForwardAndBackwardOfASmallModuleRunInTheTestProcess()
    {
        torch.manual_seed(0);
        var model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1));
        var x = randn(16, 4);
        var y = x.sum(1, keepdim: true);
        var optimizer = optim.SGD(model.parameters(), 0.05);
        float first = 0, last = 0;
        for (int step = 0; step < 50; step++)
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            var loss = nn.functional.mse_loss(model.forward(x), y);
            loss.backward();
            optimizer.step();
            if (step == 0) first = loss.item<float>();
            last = loss.item<float>();
        }
        Assert.IsTrue(model.parameters().All(p => p.grad is not null), "every parameter received a gradient");
        Assert.IsLessThan(first * 0.5f, last, $"training reduces the loss ({first} -> {last})");
    }
}
